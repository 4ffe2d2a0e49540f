import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "actions"))

from greet import GreetAction  # noqa: E402


class GreetTest(unittest.TestCase):
    def test_default_greeting(self):
        self.assertEqual(GreetAction().run(name="Ada"), "Hello, Ada!")

    def test_own_greeting(self):
        self.assertEqual(GreetAction().run(name="Ada", greeting="Hi"), "Hi, Ada!")


if __name__ == "__main__":
    unittest.main()
