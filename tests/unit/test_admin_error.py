"""``AdminError`` is part of the one exception tree in ``execgate.errors``; ``execgate.admin``
re-exports the same class, so either import catches what the admin routes raise."""

from __future__ import annotations

import pytest

import execgate.admin
import execgate.errors
from execgate.errors import AdminError, ExecgateError


def test_admin_error_lives_in_the_exception_tree_and_admin_re_exports_it() -> None:
    assert execgate.admin.AdminError is AdminError
    assert "AdminError" in execgate.admin.__all__
    assert "AdminError" in execgate.errors.__all__
    assert issubclass(AdminError, ExecgateError)
    assert "AdminError" in (execgate.errors.__doc__ or "")
    assert {execgate.admin.UNAUTHENTICATED, execgate.admin.FORBIDDEN} == AdminError.CODES


def test_admin_error_carries_its_code_detail_and_admin() -> None:
    refused = AdminError("admin.forbidden", "lacks the role", admin="ops")
    assert (refused.code, refused.detail, refused.admin) == (
        "admin.forbidden",
        "lacks the role",
        "ops",
    )
    assert str(refused) == "admin.forbidden: lacks the role"
    with pytest.raises(ValueError, match="unknown admin error code"):
        AdminError("policy.denied", "not an admin code")
