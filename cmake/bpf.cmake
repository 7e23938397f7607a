# liveio_bpf_object(TARGET SOURCES a.bpf.c... [INCLUDES dir...] [OUTPUT_DIR dir] [FLAGS flag...])
#
# Compiles each BPF C source with `clang -target bpf -O2 -g -c` into OUTPUT_DIR/<name>.bpf.o
# (default: the current binary dir) and groups the objects under the custom target TARGET.
# FLAGS are extra clang flags, e.g. `-mcpu=v3` for a build variant with 32-bit subregisters and
# jmp32 (the same sources then need another OUTPUT_DIR).
# The programs see libbpf's <bpf/bpf_helpers.h> and the distro's uapi headers (<linux/bpf.h>,
# <asm/types.h> from the multiarch directory, which -target bpf does not search by itself).
# Header dependencies are tracked through clang's depfile, so editing an included header
# rebuilds the objects that use it. The list of objects is in the target property
# LIVEIO_BPF_OBJECTS.
find_program(LIVEIO_BPF_CLANG NAMES clang-14 clang REQUIRED)
execute_process(COMMAND ${CMAKE_C_COMPILER} -print-multiarch
                OUTPUT_VARIABLE LIVEIO_MULTIARCH OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT LIVEIO_MULTIARCH)
  set(LIVEIO_MULTIARCH x86_64-linux-gnu)
endif()

function(liveio_bpf_object target)
  cmake_parse_arguments(ARG "" "OUTPUT_DIR" "SOURCES;INCLUDES;FLAGS" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "liveio_bpf_object(${target}): no SOURCES")
  endif()
  if(NOT ARG_OUTPUT_DIR)
    set(ARG_OUTPUT_DIR ${CMAKE_CURRENT_BINARY_DIR})
  endif()
  set(_incs -I${PROJECT_SOURCE_DIR}/bpf/include -idirafter /usr/include/${LIVEIO_MULTIARCH})
  foreach(_inc IN LISTS ARG_INCLUDES)
    list(APPEND _incs -I${_inc})
  endforeach()
  set(_objects)
  foreach(_src IN LISTS ARG_SOURCES)
    get_filename_component(_abs ${_src} ABSOLUTE)
    get_filename_component(_name ${_src} NAME_WE)
    set(_obj ${ARG_OUTPUT_DIR}/${_name}.bpf.o)
    add_custom_command(
      OUTPUT ${_obj}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${ARG_OUTPUT_DIR}
      COMMAND ${LIVEIO_BPF_CLANG} -target bpf -O2 -g -Wall -Werror -D__TARGET_ARCH_x86
              ${ARG_FLAGS} ${_incs} -MD -MF ${_obj}.d -c ${_abs} -o ${_obj}
      DEPENDS ${_abs}
      DEPFILE ${_obj}.d
      COMMENT "BPF ${_name}.bpf.o"
      VERBATIM)
    list(APPEND _objects ${_obj})
  endforeach()
  add_custom_target(${target} ALL DEPENDS ${_objects})
  set_property(TARGET ${target} PROPERTY LIVEIO_BPF_OBJECTS ${_objects})
endfunction()
