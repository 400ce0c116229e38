"""notify and disconnect through the project's layer (in memory here; the
integration test uses Redis and real gateways)."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.test import TestCase, override_settings

import django_gateway
from django_gateway.helpers import PresenceUnavailable


@override_settings(GATEWAY={"CHANNEL_LAYER": "memory", "USER_GROUP_TEMPLATE": "member_{user_id}"})
class HelperTests(TestCase):
    def receive_one(self, send):
        layer = get_channel_layer("memory")

        async def run():
            channel = await layer.new_channel()
            await layer.group_add("member_7", channel)
            await send()
            return await layer.receive(channel)

        return async_to_sync(run)()

    def test_anotify_reaches_the_users_group(self):
        event = self.receive_one(lambda: django_gateway.anotify(7, {"text": "hi"}))
        self.assertEqual(event, {"type": "send_notification", "message": {"text": "hi"}})

    def test_adisconnect_event(self):
        event = self.receive_one(lambda: django_gateway.adisconnect(7, code=4003, reason="password changed"))
        self.assertEqual(event, {"type": "gateway.disconnect", "code": 4003, "reason": "password changed"})
        event = self.receive_one(lambda: django_gateway.adisconnect(7))
        self.assertEqual(event, {"type": "gateway.disconnect", "code": 4006})

    def test_a_user_object_counts_by_pk(self):
        user = get_user_model().objects.create_user("bob")
        from django_gateway.conf import group_for

        self.assertEqual(group_for(user), f"member_{user.pk}")
        with self.assertRaises(ValueError):
            group_for(get_user_model()(username="unsaved"))

    def test_disconnect_validates_code_and_reason(self):
        for code in (1000, 3999, 5000, "4003"):
            with self.assertRaises(ValueError):
                django_gateway.disconnect(7, code=code)
        with self.assertRaises(ValueError):
            django_gateway.disconnect(7, reason="x" * 121)

    def test_presence_needs_the_core_layer(self):
        with self.assertRaises(PresenceUnavailable):
            django_gateway.is_online(7)
