# liveio_library(NAME DEPS...): a static (PIC) library from every .cpp in the calling
# directory. Globbing lets each subsystem grow without edits to shared build files.
function(liveio_library name)
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp ${CMAKE_CURRENT_SOURCE_DIR}/*.S)
  if(_srcs)
    add_library(${name} STATIC ${_srcs})
    target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} PUBLIC ${ARGN})
  else()
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} INTERFACE ${ARGN})
  endif()
endfunction()

# liveio_test(NAME DEPS...): one GoogleTest binary from every .cpp in the calling directory,
# registered with CTest test by test, labelled with the binary's name (ctest -L test_ebpf).
function(liveio_test name)
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  if(NOT _srcs)
    return()
  endif()
  add_executable(${name} ${_srcs})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARGN} GTest::gtest GTest::gtest_main Threads::Threads)
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600 LABELS ${name})
  # The long tests' COST (tests/schedule.cmake) is set once their names are known: after this
  # directory's discovered tests, so the script moves to the end of its include list.
  get_property(_includes DIRECTORY PROPERTY TEST_INCLUDE_FILES)
  list(REMOVE_ITEM _includes ${PROJECT_SOURCE_DIR}/tests/schedule.cmake)
  list(APPEND _includes ${PROJECT_SOURCE_DIR}/tests/schedule.cmake)
  set_property(DIRECTORY PROPERTY TEST_INCLUDE_FILES ${_includes})
endfunction()
