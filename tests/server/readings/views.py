"""The application endpoints of shared/API.md (the token endpoints are SimpleJWT's own)."""
import random

from django.http import HttpResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Faults
from .serializers import ReadingSerializer

PROXY_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
    "<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class ProfileView(APIView):
    def get(self, request):
        user = request.user
        return Response({"id": user.id, "username": user.username, "email": user.email})


class SendDataView(APIView):
    def initial(self, request, *args, **kwargs):
        # Injected 503s stand for a reverse proxy in front of the app: they come
        # before authentication, like nginx's would.
        faults = Faults.current()
        if faults.fail_ratio > 0 and random.random() < faults.fail_ratio:
            self._proxy_fault = faults
        else:
            self._proxy_fault = None
        if self._proxy_fault is None:
            super().initial(request, *args, **kwargs)

    def post(self, request):
        if self._proxy_fault is not None:
            response = HttpResponse(PROXY_503, status=503, content_type="text/html")
            if self._proxy_fault.retry_after is not None:
                response["Retry-After"] = str(self._proxy_fault.retry_after)
            return response
        serializer = ReadingSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        threshold = Faults.current().reject_temperature_above
        temperature = serializer.validated_data.get("temperature")
        if threshold is not None and temperature is not None and temperature > threshold:
            return Response(
                {"temperature": [f"Ensure this value is less than or equal to {threshold}."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        serializer.save(user=request.user)
        return Response(serializer.data, status=status.HTTP_201_CREATED)
