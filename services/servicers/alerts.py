"""AlertService."""

from __future__ import annotations

import grpc

from ledger.app.alerts import SpendAlerts
from services.api.accrual.v1 import alerts_pb2, alerts_pb2_grpc
from services.convert import alert_input, spend_alert_message
from services.errors import rpc
from services.request import request_context


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, alerts: SpendAlerts) -> None:
        self._alerts = alerts

    @rpc
    async def SetSpendAlert(
        self, request: alerts_pb2.SetSpendAlertRequest, context: grpc.aio.ServicerContext
    ) -> alerts_pb2.SpendAlert:
        ctx = request_context(context, request_id=request.request_id)
        view, seq = await self._alerts.set_alert(alert_input(request), ctx)
        return spend_alert_message(view, seq)

    @rpc
    async def ListSpendAlerts(
        self, request: alerts_pb2.ListSpendAlertsRequest, context: grpc.aio.ServicerContext
    ) -> alerts_pb2.ListSpendAlertsResponse:
        views = await self._alerts.list_alerts(request.customer_id)
        return alerts_pb2.ListSpendAlertsResponse(alerts=[spend_alert_message(v) for v in views])
