"""The feature store: frozen image features computed once (sharded, any number of writers) and read by every command."""
