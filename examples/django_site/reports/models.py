from django.db import models
from django.urls import reverse


class Report(models.Model):
    """A report someone asked for; a litetask task builds it (``task_id`` names that task)."""

    title = models.CharField(max_length=100)
    rows = models.PositiveIntegerField(default=100)
    seconds = models.FloatField(default=2.0, help_text="how long the (simulated) work takes")
    task_id = models.CharField(max_length=32, blank=True)
    total = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("reports:detail", args=[self.pk])
