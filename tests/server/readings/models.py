"""Stored readings, plus the test server's own bookkeeping (counters, faults).

The bookkeeping lives in the database, not in memory, so it is shared by every
gunicorn worker and thread and survives a server restart on the same DB file.
"""
from django.conf import settings
from django.db import IntegrityError, models, transaction


class Reading(models.Model):
    """One reading as received by POST /api/send/data/."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    temperature = models.FloatField(null=True, blank=True)
    humidite = models.FloatField(null=True, blank=True)
    accelerometre = models.FloatField(null=True, blank=True)
    # The capture time exactly as the client sent it, and parsed (UTC).
    timestamp_raw = models.CharField(max_length=64)
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class Counter(models.Model):
    """A named request counter (see readings.middleware)."""

    name = models.CharField(max_length=64, primary_key=True)
    value = models.BigIntegerField(default=0)

    @classmethod
    def bump(cls, name):
        with transaction.atomic():
            if cls.objects.filter(name=name).update(value=models.F("value") + 1):
                return
            try:
                with transaction.atomic():
                    cls.objects.create(name=name, value=1)
            except IntegrityError:
                cls.objects.filter(name=name).update(value=models.F("value") + 1)


class Faults(models.Model):
    """The fault injection settings of /test-control/faults/ (a single row, pk=1)."""

    fail_ratio = models.FloatField(default=0.0)
    retry_after = models.IntegerField(null=True, blank=True)
    reject_temperature_above = models.FloatField(null=True, blank=True)
    # A misbehaving thing in front of the app (see readings.misbehave): "" (none),
    # "redirect_302", "redirect_307", "html_200", "not_found", "forbidden", "huge_200",
    # "huge_502"; applied to the POSTs of `mode_scope` ("data", "token" or "all").
    mode = models.CharField(max_length=32, blank=True, default="")
    mode_scope = models.CharField(max_length=16, default="data")
    # Extra latency of every data request, in ms (holds a gunicorn thread like slow work).
    delay_ms = models.IntegerField(default=0)

    @classmethod
    def current(cls):
        return cls.objects.filter(pk=1).first() or cls(pk=1)
