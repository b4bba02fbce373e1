"""Models: the open_clip student, the frozen teacher (open_clip, checkpoint or Hugging Face), presets."""
from clipdistill.models.checkpoints import file_sha256, load_state_dict_file
from clipdistill.models.presets import PRESETS, list_presets, resolve_architecture
from clipdistill.models.spec import ImageSpec
from clipdistill.models.student import Student, build_student, image_spec_of, same_tokenizer
from clipdistill.models.teacher import Teacher, load_teacher

__all__ = ["ImageSpec", "PRESETS", "Student", "Teacher", "build_student", "file_sha256", "image_spec_of",
           "list_presets", "load_state_dict_file", "load_teacher", "resolve_architecture", "same_tokenizer"]
