"""The converters as they were before the columnar core (git ce31670: one Python object per event), kept as the
oracle of the equality tests (tests/data/test_build.py): on the same input the new path must write the same
dataset, shard for shard. Their own shared parts (schema, shard writer, dataset folder) are the package's."""
