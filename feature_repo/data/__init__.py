"""Tables in and out of the data contract: generation, validation, feature computation."""
