"""Rendering results: tables, figures and inert terminal text."""
