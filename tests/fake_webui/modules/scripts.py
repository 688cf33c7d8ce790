"""Fake modules.scripts: what an extension's script module may use at import time."""

import os

AlwaysVisible = object()
current_basedir = os.getcwd()
scripts_txt2img = None


def basedir():
    return current_basedir


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True
