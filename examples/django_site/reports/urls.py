from django.urls import path

from . import views

app_name = "reports"

urlpatterns = [
    path("", views.index, name="index"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/progress", views.progress, name="progress"),
    path("<int:pk>/rerun", views.rerun, name="rerun"),
]
