"""Tests of omnispectra.templates."""
