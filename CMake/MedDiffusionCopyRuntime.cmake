# Run at build time (cmake -DSOURCE_DIR=... -DDESTINATION_DIR=... -P this file) by the top-level CMakeLists.txt:
# copies into the build tree's qt-scripted-modules folder exactly what its install() rules package (same folders,
# same patterns), so that the modules find the backend and Resources in the build tree as in the package.
# file(COPY) skips files whose time stamps match, so an unchanged tree costs nothing.
foreach(var SOURCE_DIR DESTINATION_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is not set")
  endif()
endforeach()

file(COPY ${SOURCE_DIR}/MedDiffusionExtension
  DESTINATION ${DESTINATION_DIR}
  FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)
file(COPY ${SOURCE_DIR}/Resources/Models ${SOURCE_DIR}/Resources/SampleData
  DESTINATION ${DESTINATION_DIR}/Resources)
