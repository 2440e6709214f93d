"""Crypton's HTTP API: Litestar REST (pull) and server-sent events (push).

It writes commands to ``crypton.wallet.inbox`` and serves every read from an
in-memory fold of the state topics, so any number of replicas can run side by
side and each can be rebuilt from the log. Start it with ``crypton api`` or
``python -m uvicorn api.app:create_app --factory``.
"""
