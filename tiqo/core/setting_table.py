"""Every setting in one table: key, default, parser, what it does, its kind (and its environment variable).

The rows live in one module per group of sections (``setting_table_*``); their order here is the order of the docs
(the README table, the man page) and of ``tiqo config``."""

from __future__ import annotations

from tiqo.core.setting_kinds import Setting
from tiqo.core.setting_table_daemon import DAEMON
from tiqo.core.setting_table_models import MODELS
from tiqo.core.setting_table_routing import ROUTING
from tiqo.core.setting_table_storage import STORAGE

SETTINGS: tuple[Setting, ...] = (*DAEMON, *MODELS, *ROUTING, *STORAGE)
