"""Built-in local engines. Heavy libraries are imported inside ``load()``, never at import time."""
