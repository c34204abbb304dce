from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from .models import Reading


class ReadingSerializer(serializers.ModelSerializer):
    """Validates a reading; `timestamp` must be an ISO 8601 / RFC 3339 time with an offset."""

    temperature = serializers.FloatField(required=False, allow_null=True)
    humidite = serializers.FloatField(required=False, allow_null=True)
    accelerometre = serializers.FloatField(required=False, allow_null=True)
    timestamp = serializers.CharField(max_length=64, source="timestamp_raw")

    class Meta:
        model = Reading
        fields = ["id", "temperature", "humidite", "accelerometre", "timestamp", "received_at"]
        read_only_fields = ["id", "received_at"]

    def validate_timestamp(self, value):
        try:
            parsed = parse_datetime(value)
        except ValueError:
            parsed = None
        if parsed is None:
            raise serializers.ValidationError("Not an ISO 8601 date-time.")
        if timezone.is_naive(parsed):
            raise serializers.ValidationError("The date-time has no UTC offset.")
        return value

    def create(self, validated_data):
        parsed = parse_datetime(validated_data["timestamp_raw"])
        validated_data["timestamp"] = parsed.astimezone(dt_timezone.utc)
        return super().create(validated_data)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["timestamp_parsed"] = instance.timestamp.isoformat()
        data["timestamp_us"] = _epoch_us(instance.timestamp)
        data["received_at_us"] = _epoch_us(instance.received_at)
        return data


_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


def _epoch_us(value):
    """Microseconds since the Unix epoch, exact (no float rounding)."""
    return (value - _EPOCH) // timedelta(microseconds=1)
