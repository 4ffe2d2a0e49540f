import six

try:
    from st2common.runners.base_action import Action
except ImportError:  # outside StackStorm, e.g. in the pack's own tests

    class Action(object):
        def __init__(self, config=None):
            self.config = config or {}


class GreetAction(Action):
    def run(self, name, greeting="Hello"):
        return u"%s, %s!" % (six.text_type(greeting), six.text_type(name))
