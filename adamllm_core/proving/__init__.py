"""The proving ground: a generated visual world where the method's gains are measured on CPU."""
