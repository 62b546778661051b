"""Registration of the servicers: each call passes the gate (who may call it, node/api/gate.py) before its
request is parsed here, so a malformed message is INVALID_ARGUMENT (with the parser's reason), never INTERNAL,
and every RequestError a servicer raises becomes its status."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from tidebank.node.api import access, errors
from tidebank.node.api.gate import Gate
from tidebank.node.api.internal_service import require_signature
from tidebank.node.ledger.slot_moves import SlotMovedError
from tidebank.v1 import admin_pb2, clearing_pb2, escrow_pb2, internal_pb2, ledger_pb2


def _raw_handler(method: Callable, request_cls, response_cls, name: str, gate: Gate,
                 authenticate: Callable | None = None) -> grpc.RpcMethodHandler:
    short = method.__name__

    def handle(raw: bytes, context: grpc.ServicerContext):
        ticket = None
        try:
            grant = gate.admit(name, context)
            if authenticate is not None:
                authenticate(short, raw, context)
            request = _parse(request_cls, raw, context)
            ticket = gate.charge(grant, request)
        except errors.RequestError as exc:
            errors.abort(context, exc)
        try:
            try:
                response = method(request, context)
            except SlotMovedError as moved:
                exc = errors.slot_moved(moved)
                gate.finish(grant, name, exc)
                errors.abort(context, exc)
            except errors.RequestError as exc:
                gate.finish(grant, name, exc)
                errors.abort(context, exc)
            gate.finish(grant, name, None)
            return response
        finally:
            access.enter(None)  # the worker thread serves another caller next
            if ticket is not None:
                ticket.release()

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None,
                                               response_serializer=response_cls.SerializeToString)


def _raw_stream_handler(method: Callable, request_cls, response_cls, name: str, gate: Gate) -> grpc.RpcMethodHandler:
    """The same for a server-streaming method: a RequestError before or between messages ends the stream with
    its status."""

    def handle(raw: bytes, context: grpc.ServicerContext):
        ticket = None
        try:
            grant = gate.admit(name, context)
            request = _parse(request_cls, raw, context)
            ticket = gate.charge(grant, request)
        except errors.RequestError as exc:
            errors.abort(context, exc)
        try:
            try:
                yield from method(request, context)
            except SlotMovedError as moved:
                exc = errors.slot_moved(moved)
                gate.finish(grant, name, exc)
                errors.abort(context, exc)
            except errors.RequestError as exc:
                gate.finish(grant, name, exc)
                errors.abort(context, exc)
            gate.finish(grant, name, None)
        finally:
            access.enter(None)  # the worker thread serves another caller next
            if ticket is not None:
                ticket.release()

    return grpc.unary_stream_rpc_method_handler(handle, request_deserializer=None,
                                                response_serializer=response_cls.SerializeToString)


def _parse(request_cls, raw: bytes, context: grpc.ServicerContext):
    request = request_cls()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        errors.abort(context, errors.invalid_argument(
            [("request", f"not a valid {request_cls.DESCRIPTOR.full_name} message: {exc}")]))
    return request


# fault injection and membership changes: only holders of the cluster secret
SIGNED_ADMIN_METHODS = frozenset({"SetLinkFaults", "ApplyTopology", "ChangeMembership", "SlotMoveStep",
                                  "ExportSlots"})


def generic_handlers(ledger, admin, internal=None, admin_secret: str | None = None, escrow=None, clearing=None,
                     gate: Gate | None = None) -> list[grpc.GenericRpcHandler]:
    """Handlers for the public Ledger and Admin services and, when given, the Escrow service and the signed
    Internal service. Every call passes the gate (access, quota, admin log; a bare Gate() checks access only).
    With `admin_secret`, the fault-injection Admin methods also require the cluster's signature."""
    gate = gate or Gate()
    def admin_auth(method, raw, context):
        require_signature(admin_secret, method, raw, context)

    handlers = []
    services = [("tidebank.v1.Ledger", ledger, ledger_pb2, None), ("tidebank.v1.Admin", admin, admin_pb2, None)]
    if escrow is not None:
        services.append(("tidebank.v1.Escrow", escrow, escrow_pb2, None))
    if clearing is not None:
        services.append(("tidebank.v1.Clearing", clearing, clearing_pb2, None))
    if internal is not None:
        services.append(("tidebank.v1.Internal", internal, internal_pb2, internal.authenticate))
    for service_name, servicer, pb2, authenticate in services:
        service = pb2.DESCRIPTOR.services_by_name[service_name.split(".")[-1]]
        methods = {}
        for method in service.methods:
            request_cls = _message_class(method.input_type)
            response_cls = _message_class(method.output_type)
            method_auth = authenticate
            if pb2 is admin_pb2 and admin_secret is not None and method.name in SIGNED_ADMIN_METHODS:
                method_auth = admin_auth
            name = f"{service.name}/{method.name}"
            if method.server_streaming:
                methods[method.name] = _raw_stream_handler(getattr(servicer, method.name), request_cls,
                                                           response_cls, name, gate)
                continue
            methods[method.name] = _raw_handler(getattr(servicer, method.name), request_cls, response_cls, name,
                                                gate, method_auth)
        handlers.append(grpc.method_handlers_generic_handler(service_name, methods))
    return handlers


def _message_class(descriptor):
    return message_factory.GetMessageClass(descriptor)
