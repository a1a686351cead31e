"""Core: records, messages, the wire codec and the exception tree. Depends on nothing of ours."""
