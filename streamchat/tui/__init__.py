"""The Textual app: ``make_app(settings, models)`` builds it; bare ``streamchat`` runs it."""

from .app import StreamchatApp, make_app, textual_theme

__all__ = ["StreamchatApp", "make_app", "textual_theme"]
