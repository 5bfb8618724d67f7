"""A LiteLLM proxy callback with the metering handler's hooks that does nothing: the latency
script's measure of what LiteLLM itself spends on running a callback."""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class NoOp(CustomLogger):
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        return None

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        return None


handler = NoOp()
