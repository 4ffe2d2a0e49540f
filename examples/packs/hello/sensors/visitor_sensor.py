import os

try:
    from st2reactor.sensor.base import PollingSensor
except ImportError:  # outside StackStorm

    class PollingSensor(object):
        def __init__(self, sensor_service=None, config=None, poll_interval=None):
            self.sensor_service = sensor_service
            self.config = config or {}


SPOOL = os.environ.get("HELLO_SPOOL", "/tmp/hello-visitors")


class VisitorSensor(PollingSensor):
    def setup(self):
        pass

    def poll(self):
        if not os.path.exists(SPOOL):
            return
        with open(SPOOL) as spool:
            names = [line.strip() for line in spool if line.strip()]
        os.remove(SPOOL)
        for name in names:
            self.sensor_service.dispatch(
                trigger="hello.visitor_arrived", payload={"name": name}
            )

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
