"""Built-in extractors; importing this package registers them."""
