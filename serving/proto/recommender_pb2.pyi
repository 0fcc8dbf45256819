from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "timestamp", "price")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    price: float
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp: _Optional[float] = ..., price: _Optional[float] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class EventResult(_message.Message):
    __slots__ = ("index", "accepted", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    accepted: bool
    error: str
    def __init__(self, index: _Optional[int] = ..., accepted: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("results", "accepted")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    accepted: int
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ..., accepted: _Optional[int] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("surface", "exclude_item_ids", "category", "cart_item_ids", "viewed_item_id", "session_item_ids", "max_price")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CART_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    VIEWED_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    surface: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    category: str
    cart_item_ids: _containers.RepeatedScalarFieldContainer[str]
    viewed_item_id: str
    session_item_ids: _containers.RepeatedScalarFieldContainer[str]
    max_price: float
    def __init__(self, surface: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., category: _Optional[str] = ..., cart_item_ids: _Optional[_Iterable[str]] = ..., viewed_item_id: _Optional[str] = ..., session_item_ids: _Optional[_Iterable[str]] = ..., max_price: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: Context
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "retrieval_score", "source", "reason", "category", "brand", "price", "click_probability", "cart_probability", "purchase_probability")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CLICK_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    CART_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    retrieval_score: float
    source: str
    reason: str
    category: str
    brand: str
    price: float
    click_probability: float
    cart_probability: float
    purchase_probability: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., retrieval_score: _Optional[float] = ..., source: _Optional[str] = ..., reason: _Optional[str] = ..., category: _Optional[str] = ..., brand: _Optional[str] = ..., price: _Optional[float] = ..., click_probability: _Optional[float] = ..., cart_probability: _Optional[float] = ..., purchase_probability: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("user_id", "items", "personalized", "degraded", "retrieval_version", "index_version", "ranking_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    RANKING_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    personalized: bool
    degraded: bool
    retrieval_version: str
    index_version: str
    ranking_version: str
    def __init__(self, user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., personalized: _Optional[bool] = ..., degraded: _Optional[bool] = ..., retrieval_version: _Optional[str] = ..., index_version: _Optional[str] = ..., ranking_version: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("retrieval_version", "index_version", "ranking_version", "items", "process", "processes")
    RETRIEVAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    RANKING_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    retrieval_version: str
    index_version: str
    ranking_version: str
    items: int
    process: int
    processes: int
    def __init__(self, retrieval_version: _Optional[str] = ..., index_version: _Optional[str] = ..., ranking_version: _Optional[str] = ..., items: _Optional[int] = ..., process: _Optional[int] = ..., processes: _Optional[int] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "exclude_item_ids", "same_category")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SAME_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    same_category: bool
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., same_category: _Optional[bool] = ...) -> None: ...

class CartRequest(_message.Message):
    __slots__ = ("item_ids", "k", "user_id")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    user_id: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., user_id: _Optional[str] = ...) -> None: ...

class UserInsightsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class Driver(_message.Message):
    __slots__ = ("feature", "value", "contribution", "description")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    description: str
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class UserInsightsResponse(_message.Message):
    __slots__ = ("user_id", "churn_risk", "horizon_days", "drivers", "segment", "degraded", "churn_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CHURN_RISK_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    CHURN_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    churn_risk: float
    horizon_days: int
    drivers: _containers.RepeatedCompositeFieldContainer[Driver]
    segment: str
    degraded: bool
    churn_version: str
    def __init__(self, user_id: _Optional[str] = ..., churn_risk: _Optional[float] = ..., horizon_days: _Optional[int] = ..., drivers: _Optional[_Iterable[_Union[Driver, _Mapping]]] = ..., segment: _Optional[str] = ..., degraded: _Optional[bool] = ..., churn_version: _Optional[str] = ...) -> None: ...
