"""One entity's online features through Feast's online store, without the SDK's per-call planning.

``FeatureStore.get_online_features`` resolves the feature service, converts the entity rows to
protobuf, builds a response proto and converts it back to Python on every call: about 0.4 ms
of a served request's ~3 ms, for one user. ``OnlineRowReader`` resolves the features once,
when it is made (a re-applied feature repo needs a new reader: a server restart), and per
call does only what the store needs: one entity key, ``OnlineStore.online_read`` per feature
view (the same reads the SDK makes), and the values converted with Feast's own type map. The
result equals ``get_online_features(...).to_dict()`` for that one row
(tests/feature_repo/test_redis_store.py holds it to that on sqlite and Redis).

On Feast's SQLite store the reader asks the store's own connection for the same rows with one
query for all the views, and without the ``event_ts`` column: ``SqliteOnlineStore.online_read``
makes one query per view and turns every row's timestamp into a timezone-aware datetime,
which the reader throws away. That was ~100 of a read's ~235 µs (docs/benchmarks.md,
twenty-fifth session). Every other store goes through ``online_read``.
"""
from __future__ import annotations

from typing import Any

# Value kinds whose Python value is the proto field itself (scalars) or a list of its items
# (lists): converted here, a getattr each, because Feast's general converter walks ~20 type
# checks per value and a user's read holds ~25 values. Every other kind (timestamps, sets,
# maps, json, uuid, decimal, ...) goes through Feast's converter.
_PLAIN_SCALARS = frozenset({"int32_val", "int64_val", "float_val", "double_val", "string_val", "bool_val", "bytes_val"})
_PLAIN_LISTS = frozenset({"int32_list_val", "int64_list_val", "float_list_val", "double_list_val",
                          "string_list_val", "bool_list_val", "bytes_list_val"})


class OnlineRowReader:
    """Reads one entity's features (a single join key, e.g. ``user_id``): those of a feature
    service (its name) or a list of "view:feature" references."""

    def __init__(self, store, features: str | list[str], join_key: str):
        from feast import utils
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self.store = store
        self.join_key = join_key
        wanted = store.get_feature_service(features) if isinstance(features, str) else list(features)
        # The SDK's own resolution of the request into (feature view, feature names) pairs.
        planned = utils._prepare_entities_to_read_from_online_store(
            registry=store.registry, project=store.project, features=wanted,
            entity_values={join_key: ["plan"]}, full_feature_names=False)
        self.tables = [(table, list(names)) for table, names in planned[1]]
        for table, _ in self.tables:
            if [e.name for e in table.entity_columns] != [join_key]:
                raise ValueError(f"feature view {table.name} is keyed by "
                                 f"{[e.name for e in table.entity_columns]}, not [{join_key!r}]; "
                                 "read it with FeatureStore.get_online_features")
        self.feature_names = [n for _, names in self.tables for n in names]
        self._online_store = store._get_provider().online_store
        self._protos = EntityKey, Value  # imported once here, not on every read
        self._sqlite_query = _sqlite_query(store, self._online_store, self.tables)
        # Serialized scalar → its Python value: counts, rates and prices repeat across users, and
        # parsing a ValueProto costs ~1.5 us (~25 values a user).
        self._scalars: dict[bytes, Any] = {}

    def _key(self, entity_id: str):
        entity_key, value = self._protos
        return entity_key(join_keys=[self.join_key], entity_values=[value(string_val=entity_id)])

    def read(self, entity_id: str) -> dict[str, Any]:
        """{feature name: value} for one entity; None for each feature the store does not hold."""
        return self.read_many([entity_id])[0]

    def read_many(self, entity_ids: list[str]) -> list[dict[str, Any]]:
        """``read`` for several entities, in their order, with one ``online_read`` per feature
        view for all of them (what a batch of requests costs the store); on SQLite, one query
        per ``_SQLITE_KEYS_PER_QUERY`` entities for all the views."""
        if self._sqlite_query is not None:
            return self._read_sqlite(entity_ids)
        keys = [self._key(e) for e in entity_ids]
        out: list[dict[str, Any]] = [{} for _ in entity_ids]
        for table, names in self.tables:
            # A copy each call: Feast's Redis store appends its timestamp field to the list it is
            # given, so passing ours would grow it by one name per read (with 100k reads a request
            # cost 5.8 instead of 1.7 ms of CPU, docs/benchmarks.md, nineteenth session).
            rows = self._online_store.online_read(config=self.store.config, table=table, entity_keys=keys,
                                                  requested_features=list(names))
            if len(rows) != len(keys):  # every store answers one row per key, in order; say so if not
                raise RuntimeError(f"online store answered {len(rows)} rows for {len(keys)} keys of {table.name}")
            for row, (_, values) in zip(out, rows):
                values = values or {}
                for name in names:
                    value = values.get(name)
                    row[name] = _python_value(value) if value is not None else None
        return out

    def _read_sqlite(self, entity_ids: list[str]) -> list[dict[str, Any]]:
        from feast.infra.key_encoding_utils import serialize_entity_key

        if not entity_ids:
            return []
        version = self.store.config.entity_key_serialization_version
        keys = [serialize_entity_key(self._key(e), entity_key_serialization_version=version) for e in entity_ids]
        stored: dict[tuple[int, bytes], dict[str, bytes]] = {}
        conn = self._online_store._get_conn(self.store.config)
        for start in range(0, len(keys), _SQLITE_KEYS_PER_QUERY):  # within SQLite's limit on bound values
            chunk = keys[start:start + _SQLITE_KEYS_PER_QUERY]
            # fetchall, as Feast's read does: the statement is done before another thread (an
            # events push on the same connection) can commit between our steps.
            answered = conn.execute(self._sqlite_query(len(chunk)), chunk * len(self.tables)).fetchall()
            for view, key, name, value in answered:
                stored.setdefault((view, key), {})[name] = value
        value_proto, known = self._protos[1], self._scalars
        out: list[dict[str, Any]] = []
        for key in keys:
            row: dict[str, Any] = {}
            for view, (_, names) in enumerate(self.tables):
                values = stored.get((view, key), {})
                for name in names:
                    raw = values.get(name)
                    if raw is None:
                        row[name] = None
                        continue
                    found = known.get(raw, _UNPARSED)
                    if found is _UNPARSED:
                        value = value_proto()
                        value.ParseFromString(raw)
                        found = _python_value(value)
                        if not isinstance(found, list):  # immutable: safe to hand to every reader
                            if len(known) >= _KNOWN_SCALARS:
                                known.clear()
                            known[raw] = found
                    row[name] = found
            out.append(row)
        return out


_UNPARSED = object()
_KNOWN_SCALARS = 16384  # values remembered per reader (cleared when full): a few MB at most
_SQLITE_KEYS_PER_QUERY = 500  # each key is bound once per view; SQLite allows 32,766 values a query


def _sqlite_query(store, online_store, tables):
    """For Feast's SQLite store, a function of the number of keys giving one SELECT of
    (view's position, entity key, feature name, value) over all the views' tables, with the
    keys bound once per view; None for any other store (or a vector-enabled SQLite one, whose
    reads Feast handles differently)."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id

    if type(online_store) is not SqliteOnlineStore or getattr(store.config.online_store, "vector_enabled", False):
        return None
    versioning = store.config.registry.enable_online_feature_view_versioning
    names = [_quote_id(_table_id(store.config.project, table, versioning)) for table, _ in tables]
    cache: dict[int, str] = {}

    def query(n_keys: int) -> str:
        if n_keys not in cache:
            marks = ",".join("?" * n_keys)
            cache[n_keys] = " UNION ALL ".join(
                f"SELECT {i}, entity_key, feature_name, value FROM {name} WHERE entity_key IN ({marks})"
                for i, name in enumerate(names))
        return cache[n_keys]

    return query


def _python_value(value) -> Any:
    """A Feast ValueProto as the Python value the SDK's to_dict() gives."""
    kind = value.WhichOneof("val")
    if kind in _PLAIN_SCALARS:
        return getattr(value, kind)
    if kind in _PLAIN_LISTS:
        return list(getattr(value, kind).val)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value)
