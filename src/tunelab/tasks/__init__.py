"""Built-in tasks X -> Y that need no download (the embedded task of the quickstart lives here)."""
