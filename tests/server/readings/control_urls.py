from django.urls import path

from . import control

urlpatterns = [
    path("stats/", control.StatsView.as_view()),
    path("readings/", control.ReadingsView.as_view()),
    path("blacklist-all/", control.BlacklistAllView.as_view()),
    path("faults/", control.FaultsView.as_view()),
    path("misbehave/", control.MisbehaveView.as_view()),
    path("users/", control.UsersView.as_view()),
]
