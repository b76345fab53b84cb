from django.urls import path
from reports import views

urlpatterns = [
    path("reports", views.start_report),
    path("reports/<str:run_id>", views.report_status),
]
