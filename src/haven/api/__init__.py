"""The REST API: reads the store, writes intent (`create_app`)."""
from haven.api.app import create_app

__all__ = ["create_app"]
