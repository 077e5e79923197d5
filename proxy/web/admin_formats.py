"""Formats of admin inputs that the handlers parse and the OpenAPI description declares.

Kept apart from both so the description never imports a handler module (which imports the
description back through ``admin_api``)."""

from __future__ import annotations

#: Shadow ``since``: seconds ago with an optional unit. ASCII digits (``\d`` takes other
#: scripts' too), and few enough to stay a finite time.
SINCE_NUMBER = r"([0-9]{1,15}(?:\.[0-9]{1,9})?)([smhd]?)"
