"""pytest configuration for the interop tests.

The helper modules next to the tests hold assertions of their own (``foolscap_expect.py`` checks
whole scenario results): have pytest rewrite them too, so a failing check shows the values it
compared. This must run before the test modules import them.
"""

import pytest

pytest.register_assert_rewrite("foolscap_expect", "peers")
