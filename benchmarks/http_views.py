"""The endpoint the HTTP benchmark calls: one primary-key read, 2 ms on the server."""

from django.http import HttpRequest, JsonResponse

from benchmarks.benchapp.models import SlowItem


async def item(request: HttpRequest, pk: int) -> JsonResponse:
    obj = await SlowItem.objects.aget(pk=pk)
    return JsonResponse({"id": obj.pk, "name": obj.name, "price": str(obj.price)})
