"""The data layer: the schema's migrations, the named queries, and the one module that runs them."""
