"""Protocol adapters: pure functions between wire formats and engine types.

Nothing here touches Ray, HTTP servers or the engine: each module parses and
validates one protocol's requests (raising ``engine.errors`` types that name
the field) and encodes its responses. ``serve/tasks.py`` ties them to a task.
"""
