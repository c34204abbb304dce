from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("readings", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="faults",
            name="mode",
            field=models.CharField(blank=True, default="", max_length=32),
        ),
        migrations.AddField(
            model_name="faults",
            name="mode_scope",
            field=models.CharField(default="data", max_length=16),
        ),
        migrations.AddField(
            model_name="faults",
            name="delay_ms",
            field=models.IntegerField(default=0),
        ),
    ]
