"""`autoglm token create|list|revoke`: the bearer-token store, each change recorded in the
admin audit chain."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path


def add_token_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`autoglm token create|list|revoke`."""
    token = sub.add_parser("token", help="manage bearer tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser("create")
    create.add_argument("principal")
    create.add_argument(
        "--scope", action="append", default=[], help="generate, models:read, admin (repeatable)"
    )
    create.add_argument(
        "--role",
        action="append",
        default=[],
        help="user, operator, auditor, admin (repeatable): their scopes are added to --scope's",
    )
    create.add_argument(
        "--model", action="append", default=[], help="allowed model (repeatable; none = all)"
    )
    create.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME",
        help="allowed LoRA adapter, a tenant's own (repeatable; none = all)",
    )
    create.add_argument(
        "--ttl-hours", type=float, help="hours until the token expires (default: never)"
    )
    create.add_argument(
        "--bind-cert", help="only usable with this client-certificate identity (SAN URI or CN)"
    )
    create.add_argument("--max-streams", type=int, help="concurrent requests (default: server's)")
    create.add_argument("--requests-per-minute", type=int, help="(default: server's)")
    create.add_argument("--max-tokens-per-request", type=int, help="(default: server's)")
    create.add_argument(
        "--tokens-per-minute", type=int, help="prompt + generated tokens (default: server's)"
    )
    create.add_argument(
        "--store", type=Path, help="token store file (default: HOME/dev/tokens.json)"
    )
    _add_admin_audit_dir(create)
    create.set_defaults(func=_token_create)
    lst = token.add_parser("list")
    lst.add_argument("--store", type=Path, help="token store file (default: HOME/dev/tokens.json)")
    lst.set_defaults(func=_token_list)
    revoke = token.add_parser("revoke")
    revoke.add_argument("token_id")
    revoke.add_argument(
        "--store", type=Path, help="token store file (default: HOME/dev/tokens.json)"
    )
    _add_admin_audit_dir(revoke)
    revoke.set_defaults(func=_token_revoke)


def _store(args: argparse.Namespace):
    from autoglm.server.security.bearer_tokens import TokenStore

    return TokenStore(args.store or args.home / "dev" / "tokens.json")


def _token_create(args: argparse.Namespace) -> int:
    ttl = timedelta(hours=args.ttl_hours) if args.ttl_hours else None
    from autoglm.server.security.limits import PrincipalLimits

    limits = None
    if (
        args.max_streams
        or args.requests_per_minute
        or args.max_tokens_per_request
        or args.tokens_per_minute
    ):
        limits = PrincipalLimits(
            max_streams=args.max_streams,
            requests_per_minute=args.requests_per_minute,
            max_tokens_per_request=args.max_tokens_per_request,
            tokens_per_minute=args.tokens_per_minute,
        )
    token, record = _store(args).create(
        args.principal,
        args.scope,
        args.model,
        ttl=ttl,
        bound_identity=args.bind_cert,
        limits=limits,
        roles=args.role,
        adapters=args.adapter,
    )
    print(
        f"token id {record.id} for {record.principal} (scopes: {', '.join(sorted(record.scopes))})",
        file=sys.stderr,
    )
    _audit_admin(
        args,
        "token.create",
        f"token {record.id} for {record.principal} (scopes: {','.join(sorted(record.scopes))})",
    )
    print("the token is shown once; store it now:", file=sys.stderr)
    print(token)
    return 0


def _audit_admin(args: argparse.Namespace, action: str, target: str) -> None:
    """The admin chain's record of a token change (audit/admin.py); a failure to write it is
    reported and fails the command (the change itself is made: say so)."""
    from autoglm.server.audit.admin import record_admin
    from autoglm.server.audit.writer import AuditError

    # Default: beside the token store, so a store's changes are recorded wherever it lives.
    store = args.store or args.home / "dev" / "tokens.json"
    audit_dir = args.audit_dir or store.parent / "audit"
    try:
        record_admin(audit_dir, action, "OK", target)
    except (AuditError, OSError) as exc:
        raise SystemExit(f"autoglm: error: {action} done but NOT audited: {exc}") from None


def _token_list(args: argparse.Namespace) -> int:
    for r in _store(args).list():
        state = (
            "revoked"
            if r.revoked
            else ("expires " + r.expires_at.isoformat() if r.expires_at else "active")
        )
        roles = f"  roles: {','.join(sorted(r.roles))}" if r.roles else ""
        roles += f"  adapters: {','.join(sorted(r.adapters))}" if r.adapters else ""
        print(f"{r.id}  {r.principal:<20} {','.join(sorted(r.scopes)):<28} {state}{roles}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        record = store.revoke(args.token_id)
    except KeyError:
        raise ValueError(
            f"token_id: no token {args.token_id!r} in {store.path} (see `autoglm token list`)"
        ) from None
    _audit_admin(args, "token.revoke", f"token {record.id} for {record.principal}")
    print(f"revoked {record.id} ({record.principal})")
    return 0


def _add_admin_audit_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audit-dir",
        type=Path,
        help="audit folder: the record goes to its admin/ chain (default: the token store's "
        "folder/audit)",
    )
