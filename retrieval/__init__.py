"""Candidate retrieval: the two-tower model, its training and export, and the FAISS index."""
import os

# TFRS needs Keras 2: this must be set before anything imports tf.keras.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
