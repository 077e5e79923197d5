"""The safety policy: what a prompt version may not contain (keys and tokens, instructions
to reveal the system prompt or credentials, text beyond the length limits) and what it must
(required blocks and phrases), checked at push, import and promote.

Pure functions of text: the registry maps a version to its ``TextPart``s and a finding to
its refusal (``proxy/registry/safety_gate.py``); ``promptproxy prompts lint`` maps a
finding's line to the prompt file's.
"""

from proxy.safety.phrases import DEFAULT_DENIED, DeniedRule, compile_pattern
from proxy.safety.policy import (
    RULE_FAMILIES,
    RequiredPhrase,
    SafetyFinding,
    SafetyPolicy,
    TextPart,
    check_version,
)
from proxy.safety.secrets import SECRET_RULE, SecretShape, find_secrets

__all__ = [
    "DEFAULT_DENIED",
    "RULE_FAMILIES",
    "SECRET_RULE",
    "DeniedRule",
    "RequiredPhrase",
    "SafetyFinding",
    "SafetyPolicy",
    "SecretShape",
    "TextPart",
    "check_version",
    "compile_pattern",
    "find_secrets",
]
