"""The hub: coordinator service, persistence, round scheduler (never imports ``node``)."""
