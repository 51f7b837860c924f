"""Tests of fleche_redis.transport on its own."""
