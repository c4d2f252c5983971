"""Test support, not library code: what sftlab's own tests and your tests build on.

- `fixtures`: the pytest fixtures the plugin registers (sftdata.pytest_plugin, entry point
  `pytest11: sftlab`): the demo tokenizer, a tiny in-process model, a conversation factory.
- `audit_fixture`: the `sftdata_audit` fixture (gate your CI on an audit of your data).
- `families`: real chat templates of major model families put on the demo tokenizer (golden
  mask tests, `sftdata show` demos).
"""

__all__ = ["audit_fixture", "families", "fixtures"]
