"""Who may do what on the log: SASL/SCRAM users and their ACLs, one table per component.

Anyone who can write the wallet inbox can credit money, so a shared cluster
authenticates every client (SASL/SCRAM-SHA-512) and authorizes it with ACLs that
allow each component only what it does:

======== ======================================= ====================================
who      writes                                  reads (and its consumer groups)
======== ======================================= ====================================
api      wallet inbox, users                     orders, balances, trades, depth,
                                                 transfers, users; ``crypton-api-*``
dataflow wallet and book inboxes, orders,        wallet and book inboxes;
         balances, trades, depth, transfers,     ``crypton-dataflow-*`` (and sees
         rejections, dead letters                that users exists)
auditor  nothing                                 every topic; ``crypton-reader``
======== ======================================= ====================================

:data:`ACCESS` is that table; ``tests/test_security.py`` enforces it on a real
broker and ``k8s/generate.py`` turns it into Strimzi ``KafkaUser`` ACLs. The
embedded broker runs with it through :class:`ScramSecurity` (a SASL listener, a
super user bootstrapped at format time, the standard authorizer).

>>> [g.name for g in ACCESS["api"] if "Write" in g.operations]
['wallet.inbox', 'users']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from confluent_kafka.admin import AdminClient

# confluent-kafka's package does not re-export these for type checkers.
from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from confluent_kafka.admin._scram import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from crypton import topics

__all__ = [
    "ACCESS",
    "MECHANISM",
    "Grant",
    "ScramSecurity",
    "acl_bindings",
    "client_security",
    "create_acls",
    "create_scram_users",
]

MECHANISM: Final = "SCRAM-SHA-512"
_ITERATIONS = 8192

Resource = Literal["topic", "group", "cluster"]
Operation = Literal["Read", "Write", "Describe", "Create", "IdempotentWrite"]


@dataclass(frozen=True)
class Grant:
    """Operations allowed on one resource: a logical topic (the exchange's prefix is
    added when applied), a consumer-group name prefix, or the cluster."""

    resource: Resource
    name: str
    operations: tuple[Operation, ...]

    def pattern(self) -> Literal["literal", "prefix"]:
        """Groups are named per process (``crypton-api-<uuid>``): granted by prefix."""
        return "prefix" if self.resource == "group" else "literal"

    def resource_name(self, prefix: str = "") -> str:
        """The Kafka resource name: the prefixed topic, the group prefix, ``kafka-cluster``."""
        if self.resource == "topic":
            return topics.topic_name(self.name, prefix)
        return self.name if self.resource == "group" else "kafka-cluster"


def _topics(operations: tuple[Operation, ...], *logical: str) -> tuple[Grant, ...]:
    return tuple(Grant("topic", name, operations) for name in logical)


_STATE: Final = (topics.ORDERS, topics.BALANCES, topics.TRADES, topics.DEPTH, topics.TRANSFERS)
# Idempotent producers (acks=all, enable.idempotence) ask for a producer id; brokers
# since 3.0 grant it with Write on any topic, older ones need the cluster operation.
_IDEMPOTENT: Final = Grant("cluster", "kafka-cluster", ("IdempotentWrite",))

ACCESS: Final[Mapping[str, tuple[Grant, ...]]] = {
    "api": (
        # Commands (place, cancel, credit, debit) and users with hashed API keys.
        *_topics(("Write",), topics.WALLET_INBOX, topics.USERS),
        *_topics(("Read",), *_STATE, topics.USERS),
        Grant("group", "crypton-api-", ("Read",)),
        _IDEMPOTENT,
    ),
    "dataflow": (
        # The wallet step writes the book inbox and the book step the wallet inbox.
        *_topics(("Read", "Write"), topics.WALLET_INBOX, topics.BOOK_INBOX),
        *_topics(("Write",), *_STATE, topics.REJECTIONS, topics.DEAD_LETTERS),
        # `crypton dataflow` checks that every topic exists before it starts: it must
        # see the users topic in the metadata, never read it.
        Grant("topic", topics.USERS, ("Describe",)),
        # Its own topic of machine bases (``dataflows.bases``), made on its start, and
        # the one from before the slots, read for the deltas that still name it.
        Grant("topic", topics.BASES, ("Read", "Write", "Create")),
        Grant("topic", topics.LEGACY_BASES, ("Read",)),
        Grant("group", "crypton-dataflow-", ("Read",)),
        _IDEMPOTENT,
    ),
    "auditor": (
        *_topics(("Read",), *(spec.logical for spec in topics.TOPICS)),
        Grant("group", "crypton-reader", ("Read",)),
    ),
}
"""Each component's grants; anything else is denied (``allow.everyone.if.no.acl.found=false``)."""


# librdkafka's BROKER resource type is Kafka's CLUSTER (code 4).
_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "cluster": ResourceType.BROKER,
}
_PATTERN = {"literal": ResourcePatternType.LITERAL, "prefix": ResourcePatternType.PREFIXED}
_OPERATION = {
    "Read": AclOperation.READ,
    "Write": AclOperation.WRITE,
    "Describe": AclOperation.DESCRIBE,
    "Create": AclOperation.CREATE,
    "IdempotentWrite": AclOperation.IDEMPOTENT_WRITE,
}


def acl_bindings(user: str, grants: tuple[Grant, ...], prefix: str = "") -> list[AclBinding]:
    """``grants`` of ``User:user`` as Kafka ACL bindings (allow, from any host)."""
    return [
        AclBinding(
            _RESOURCE[grant.resource],
            grant.resource_name(prefix),
            _PATTERN[grant.pattern()],
            f"User:{user}",
            "*",
            _OPERATION[operation],
            AclPermissionType.ALLOW,
        )
        for grant in grants
        for operation in grant.operations
    ]


def create_acls(client: AdminClient, bindings: list[AclBinding], timeout: float = 30.0) -> None:
    """Create ``bindings`` (idempotent); raises the first failure."""
    for future in client.create_acls(bindings, request_timeout=timeout).values():
        future.result()


def create_scram_users(
    client: AdminClient, passwords: Mapping[str, str], timeout: float = 30.0
) -> None:
    """Create or reset SCRAM-SHA-512 credentials, as the Strimzi User Operator does."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(u, info, p.encode()) for u, p in passwords.items()
    ]
    for future in client.alter_user_scram_credentials(upserts, request_timeout=timeout).values():
        future.result()


def client_security(user: str, password: str) -> tuple[tuple[str, str], ...]:
    """librdkafka settings of a SCRAM client on a plaintext-transport SASL listener
    (``Settings.security``; children get them as ``CRYPTON_KAFKA_SASL_*``)."""
    return (
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", MECHANISM),
        ("sasl.username", user),
        ("sasl.password", password),
    )


def _jaas(module: str, user: str, password: str, *extra: str) -> str:
    fields = " ".join([f'username="{user}"', f'password="{password}"', *extra])
    return f"org.apache.kafka.common.security.{module} required {fields};"


@dataclass(frozen=True)
class ScramSecurity:
    """An embedded Kafka node that authenticates and authorizes every connection.

    Clients connect with SCRAM-SHA-512 to the ``SASL_PLAINTEXT`` listener; brokers
    replicate over it as the super user ``admin``, whose credential is written at
    format time (``kafka-storage format --add-scram``), before any node runs. The
    controller listener takes SASL/PLAIN with the same super user: SCRAM credentials
    live in the metadata log the controllers serve, so they cannot guard it.
    Loopback only: the transport is not encrypted (production terminates TLS).
    """

    admin_password: str
    admin_user: str = "admin"

    def listeners(self, host: str, client_port: int, controller_port: int) -> dict[str, str]:
        """The listener properties of one node."""
        client = f"SASL_PLAINTEXT://{host}:{client_port}"
        return {
            "listeners": f"{client},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": client,
            "listener.security.protocol.map": (
                "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
            ),
            "inter.broker.listener.name": "SASL_PLAINTEXT",
        }

    def properties(self) -> dict[str, str]:
        """Authentication and authorization properties, the same on every node."""
        admin, password = self.admin_user, self.admin_password
        return {
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": _jaas(
                "scram.ScramLoginModule", admin, password
            ),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": _jaas(
                "plain.PlainLoginModule", admin, password, f'user_{admin}="{password}"'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{admin}",
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that bootstrap the super user's credential."""
        return [
            "--add-scram",
            f"{MECHANISM}=[name={self.admin_user},password={self.admin_password}]",
        ]

    def admin_security(self) -> tuple[tuple[str, str], ...]:
        """Client settings of the super user (topic provisioning, ACLs, users)."""
        return client_security(self.admin_user, self.admin_password)
