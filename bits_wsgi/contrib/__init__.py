"""Framework sugar: one module per framework, importing nothing of it at run time."""
