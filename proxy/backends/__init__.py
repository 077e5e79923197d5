"""Where shared state lives: one backend per `registry.store`, opened whole.

``kinds`` lists the backends as data (schemes, module, shared or not, pair sink, own
settings); ``base`` defines ``Backend``; ``open.open_backend`` opens the one the store
names; ``embedded`` and ``redis`` (and ``postgres``) each open every part of theirs. This
module imports nothing: the configuration reads ``kinds`` while it is itself being loaded.
"""
