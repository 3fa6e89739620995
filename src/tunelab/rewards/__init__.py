"""Reward functions for the RL stages: built-ins by name, a user's own ``file.py:function``, an ``rm`` model.

``registry.py`` names and loads them, ``settings.py`` holds their config keys, ``calling.py`` wraps each so that
a failure names the function and the sample; one small module per family of built-ins. docs/rewards.md has
every definition. Nothing is imported here: the config validation reads ``registry`` before any model loads.
"""
