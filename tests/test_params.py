"""List parameters in every form papermill delivers them: a list, "a,b", one name, or a list literal string."""
import pytest

from dualcam_lib.params import as_list

CHOICES = ("cam", "gradcam", "gradcampp")


@pytest.mark.parametrize("value", [
    ["cam", "gradcam"],
    ("cam", "gradcam"),
    "cam,gradcam",
    " cam , gradcam ",
    "['cam', 'gradcam']",
    '["cam","gradcam"]',
    "('cam', 'gradcam')",
    [" cam", "gradcam "],
])
def test_every_form_gives_the_same_list(value):
    assert as_list(value, "methods", CHOICES) == ["cam", "gradcam"]


def test_one_name_and_order_kept():
    assert as_list("cam", "methods", CHOICES) == ["cam"]
    assert as_list("['cam']", "methods", CHOICES) == ["cam"]
    assert as_list("gradcampp,cam", "methods", CHOICES) == ["gradcampp", "cam"]


def test_without_choices_any_name_passes():
    assert as_list("resnet50,vgg16_gap", "backbones") == ["resnet50", "vgg16_gap"]


@pytest.mark.parametrize("value, why", [
    ("['cam', 'nope']", r"unknown name\(s\) 'nope'"),
    ("cam,nope", r"unknown name\(s\) 'nope'"),
    ("", "empty"),
    ("[]", "empty"),
    ([], "empty"),
    ("cam,,gradcam", "empty"),
    ("['cam'", "not a readable list literal"),
    ("[1, 2]", "every item must be a name"),
    (["cam", 3], "every item must be a name"),
    (None, "a NoneType is not a list"),
    (3, "int is not a list"),
    ({"cam": 1}, "a dict is not a list"),
])
def test_bad_values_name_the_parameter_value_and_choices(value, why):
    with pytest.raises(ValueError, match=why) as err:
        as_list(value, "methods", CHOICES)
    message = str(err.value)
    assert "'methods'" in message and repr(value) in message
    assert "allowed: cam, gradcam, gradcampp" in message


@pytest.mark.parametrize("value", [[-1.0, 0, 1.5], (-1, 0, 1.5), "-1,0,1.5", " -1 , 0, 1.5 ", "[-1, 0, 1.5]"])
def test_number_lists_in_every_form(value):
    from dualcam_lib.params import as_number_list

    assert as_number_list(value, "shifts") == [-1.0, 0.0, 1.5]


@pytest.mark.parametrize("value, why", [("a,b", "'a' is not a number"), ("[1, 'x']", "'x' is not a number"),
                                        ("", "is not a number"), ([], "not a non-empty list"),
                                        ([True], "is not a number"), ("[1,", "not a readable list literal")])
def test_bad_number_lists_are_named(value, why):
    from dualcam_lib.params import as_number_list

    with pytest.raises(ValueError, match="parameter 'shifts'") as info:
        as_number_list(value, "shifts")
    assert why in str(info.value)
