"""Thin Lambda entry points. Each module is deployed flat at the function's root."""
