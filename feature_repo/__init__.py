"""The data layer: the data contract, validation, the synthetic shop and the Feast repo.

The directory is also a Feast repository (feature_store.yaml + definitions.py), so
`feast apply` and `feast materialize-incremental` work from inside it. Everything that is not
a Feast declaration is listed in .feastignore so that `feast apply` does not import it.
"""
